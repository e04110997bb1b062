"""Per-modality encoders: each maps one utterance's inputs to one vector."""
