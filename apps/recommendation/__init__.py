"""Sequential recommendation with contrastive learning: SASRec, CL4SRec, DuoRec and MCLRec in one framework.

Pipeline: S3-Rec text or CSV interactions -> chronological leave-one-out (:mod:`apps.recommendation.data`) ->
SASRec backbone with full-softmax cross-entropy for every method, plus each method's contrastive term from
:mod:`core.losses` (:mod:`apps.recommendation.model`) -> Lightning training with early stopping on validation
NDCG@10 (:mod:`apps.recommendation.train`) -> full-ranking HR / NDCG at 5, 10, 20 and the report
(:mod:`apps.recommendation.evaluate`). Seed paper: Qin et al., "Meta-optimized Contrastive Learning for
Sequential Recommendation", SIGIR 2023. Entry point: ``python -m apps.recommendation {fit,evaluate,run,recommend}
--help``.
"""
