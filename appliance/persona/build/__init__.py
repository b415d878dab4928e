"""Build a persona bundle from a character's dialogue (`typewriter persona build`).

Dialogue in (a play, a transcript, a screenplay), one character out, in a bundle
the appliance runs: a LoRA adapter on a pretrained GGUF base (`--base`), or a
small LLaMA trained from scratch. Training needs the `train` extra (torch,
transformers, tokenizers, peft, accelerate, rich); nothing here is imported on
the appliance's runtime path.
"""


from appliance.errors import UserError


class BuildError(UserError):
    """A build that cannot go on; the message names the file or setting and the fix."""
