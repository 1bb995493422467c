"""Serving: Triton model repositories written from trtc artifacts, and the real Triton server run on them.

schema.py reads and writes config.pbtxt with Triton's own ModelConfig schema; the repository
writer, its checks and the server launcher build on it. Triton is the server: nothing here
answers an inference request itself.
"""
