"""Why a model decided: attention maps, Grad-CAM and integrated gradients, and the checks that tell whether
an explanation means anything (the pointing game on shapes, the model-randomisation test)
(``python -m mmfuse.explain ckpt_path=<ckpt> n=16``)."""
