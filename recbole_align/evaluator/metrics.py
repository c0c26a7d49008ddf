"""Metrics that recbole-align adds to RecBole's registry."""

from recbole.evaluator import register
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType


class FullMRR(AbstractMetric):
    r"""Mean reciprocal rank over the full ranking (the Exp-RSFT paper's eq. 23).

    .. math:: \mathrm{MRR} = \frac{1}{N}\sum_{i=1}^{N} \frac{1}{r_i}

    where :math:`r_i` is the rank of case *i*'s held-out item among all candidate items (ties get
    their average rank). Unlike RecBole's ``MRR@K`` it is not truncated at a cut-off. Reported
    under the key ``mrr``.
    """

    metric_type = EvaluatorType.RANKING
    metric_need = ["rec.meanrank"]

    def calculate_metric(self, dataobject):
        pos_rank_sum, _, pos_len = dataobject.get("rec.meanrank").float().unbind(dim=1)
        mean_rank = pos_rank_sum / pos_len
        return {"mrr": round((1.0 / mean_rank).mean().item(), self.decimal_place)}


def register_metrics():
    """Add our metrics to RecBole's metric registry (module globals read by Config and Evaluator)."""
    for metric_class in (FullMRR,):
        name = metric_class.__name__.lower()
        register.metrics_dict[name] = metric_class
        register.metric_information[name] = metric_class.metric_need
        register.metric_types[name] = metric_class.metric_type
