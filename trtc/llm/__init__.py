"""LLM generation over trtc's executors: decoder recognition (`decoder`), the KV cache of one
generation in its growing and static forms (`cache`), the GPU engine executor (`engine`),
onnxruntime-genai folders (`genai`), the sampler (`sampling`), the generation loop (`generate`),
token-level verification (`verify`) and text (`text`).

One loop and one sampler serve every executor: a `step(feeds) -> outputs` callable (the CPU
reference, either cache form) or, for a static cache an executor keeps itself, a `CacheExecutor`
(a GPU engine built with --llm)."""
