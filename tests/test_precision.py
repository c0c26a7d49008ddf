"""mixed_precision: bf16 runs the training loss under autocast to bfloat16; fp32 leaves it alone."""

import torch

from recbole_align.trainer.align_trainer import with_precision


def loss_dtype(mixed_precision):
    weights = torch.randn(4, 4)
    loss = with_precision(lambda interaction: interaction @ weights, mixed_precision, torch.device("cpu"))
    return loss(torch.randn(2, 4)).dtype


def test_bf16_autocasts_the_loss_and_fp32_does_not():
    assert loss_dtype("bf16") == torch.bfloat16
    assert loss_dtype(None) == torch.float32
