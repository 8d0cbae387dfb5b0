"""ftp-train: learn an FTP schedule (per-block sparsities + token routers) for a Hugging Face LLM.

Pipeline (arXiv 2412.11494): 1) genetic sparsity search with static routers, seeded with the
greedy KL block-removal order (``block_search``) and ShortGPT's influence order, 2) dynamic router
training with the model frozen - 2a routers fitted to per-token skip costs (``skip_costs``,
``router_fitting``), 2b the FTP losses (``router_training``) - 3) genetic fine-tuning of the
schedule with the trained routers.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
