"""Pieces shared by the ops: input normalisation, validation, activations, chunk gate algebra."""
