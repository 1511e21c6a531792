"""The vLLM architectures steerkern has steered classes for, and their names (no vLLM import)."""

ARCHITECTURES = (
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
)
PREFIX = "Steerkern"


def steered_name(architecture: str) -> str:
    """The registered name of ``architecture``'s steered class (``steerkern serve``'s override)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"steerkern has no steered vLLM class for {architecture}; it steers {', '.join(ARCHITECTURES)}"
        )
    return PREFIX + architecture


def steer_architectures(config):
    """``hf_overrides`` callable: select the steered class of the model's architecture. Others
    are left as they are (vLLM also calls it on placeholder configs); an engine whose model
    class is not a steered one fails at start (``SteeringPrograms``)."""
    config.architectures = [PREFIX + name if name in ARCHITECTURES else name for name in config.architectures or ()]
    return config
