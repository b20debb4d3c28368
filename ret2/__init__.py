"""ret2: ReT-2, a universal multimodal retriever native to the Hugging Face Hub."""
