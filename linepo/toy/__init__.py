"""The embedded toy world: styles, prompts and corpus, its tokenizer and tiny model, its SFT build."""
