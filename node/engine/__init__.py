"""The reference engine: model, tokenizer, KV pool, sampler and the generation loop."""
