"""How a model degrades: noisy and missing inputs at increasing levels, and each modality's contribution
(``python eval.py ckpt_path=<ckpt> +robustness=<name>``; ``conf/robustness/``)."""
