"""The model runtime: ONNX seq2seq decoding, the sentence encoder, retrieval and reply ranking (no Redis)."""
