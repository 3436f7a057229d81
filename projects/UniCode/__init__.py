"""UniCode (Zheng et al., ECCV 2024, "UniCode: Learning a Unified Codebook
for Multimodal Large Language Models"): a visual tokenizer whose codebook
is an LLM's token-embedding table, so images become LLM vocabulary ids."""
