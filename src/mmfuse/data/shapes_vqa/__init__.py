"""``data=shapes_vqa``: questions about drawn scenes of 2-4 coloured shapes, balanced per question text."""
