"""RiM, Reasoning in Memory (arXiv 2605.30343): memory blocks after the question, LoRA and
learned block embeddings, trained by grounding then refinement (`../shared/RIM.md`)."""
