"""LLM generation over trtc's executors: decoder recognition (`decoder`), onnxruntime-genai folders
(`genai`), the sampler (`sampling`), the generation loop (`generate`) and text (`text`).

One loop and one sampler serve every executor; an executor is a `step(feeds) -> outputs` callable
(the CPU reference today, a GPU engine later)."""
