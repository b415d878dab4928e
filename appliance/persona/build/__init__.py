"""Build a persona bundle from a character's dialogue (`typewriter persona build`).

Dialogue in (a play, a transcript, a screenplay), a small LLaMA GGUF fine-tuned
on one character out, in a bundle the appliance runs. Training needs the
`train` extra (torch, transformers, tokenizers, peft, rich); nothing here is
imported on the appliance's runtime path.
"""


from appliance.errors import UserError


class BuildError(UserError):
    """A build that cannot go on; the message names the file or setting and the fix."""
