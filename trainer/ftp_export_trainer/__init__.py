"""ftp-train: learn an FTP schedule (per-block sparsities + token routers) for a Hugging Face LLM.

Pipeline (arXiv 2412.11494): 1) genetic sparsity search with static routers, seeded with the
greedy KL block-removal order (``block_search``) and ShortGPT's influence order, 2) dynamic router
training with the model frozen - 2a routers fitted to per-token skip costs (``skip_costs``,
``router_fitting``), 2b the FTP losses (``router_training``) - 3) genetic fine-tuning of the
schedule with the trained routers.

Modules: ``cli`` (flags) -> ``settings`` -> ``pipeline`` (orchestration), which runs
``search_steps`` (steps 1 and 3, ``ga``) and ``router_step`` (step 2) on a shared ``context``,
with ``checkpoints`` after each step; ``heldout`` picks the final step and builds the comparison
table from :mod:`ftp_export.evaluation`; ``report`` writes the report and plots.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
