from recbole_align.model.hstu import HSTU

__all__ = ["HSTU"]
