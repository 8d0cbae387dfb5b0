"""The routing semantics shared by trainer, PyTorch reference and every export target."""

from ftp_export.routing.factors import FEATURES, query_count, router_features, update_signal
from ftp_export.routing.router import RouterBank, RouterMLP, static_router_bank
from ftp_export.routing.selection import keep_q16, kept_count, slot_count, threshold_select, topk_select

__all__ = [
    "FEATURES",
    "RouterBank",
    "RouterMLP",
    "keep_q16",
    "kept_count",
    "query_count",
    "router_features",
    "slot_count",
    "static_router_bank",
    "threshold_select",
    "topk_select",
    "update_signal",
]
