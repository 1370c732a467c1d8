"""The composed model: the frozen base and the reasoner's latents, and how they decode.

`latent_lm` composes them (encode, reason, the thinking span, answer log-probs, generate);
`prefix` is the encoded prompt its passes extend; `decoding` and `device_rows` decode token by
token with budget forcing; `sampling` draws random numbers as functions of (seed, step, slot);
`logprobs` scores answers a chunk of the LM head at a time; `activation_checkpointing`
recomputes the base's layers in backward.
"""
