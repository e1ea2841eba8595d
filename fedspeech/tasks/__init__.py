from fedspeech.tasks.registries import known_names

__all__ = ["known_names"]
