from recbole_align.trainer.align_trainer import AlignTrainer, AlignTrainerMixin, with_align_evaluation

__all__ = ["AlignTrainer", "AlignTrainerMixin", "with_align_evaluation"]
