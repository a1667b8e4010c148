"""The decoupled trainer: streams shards into LoRA-SAM fine-tuning and evaluation. Never imports `synth`."""
