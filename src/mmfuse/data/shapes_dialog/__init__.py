"""``data=shapes_dialog``: 10-round dialogs about drawn scenes of two or three shapes (see ``rounds.py``)."""
