"""Fine-tune FLAN-T5 on IMDB sentiment with a hand-written Accelerate loop, and measure what it costs."""

__version__ = "0.1.0"
__all__ = ["Classifier"]


def __getattr__(
    name,
):  # `from flant5_imdb import Classifier` without importing torch for every submodule user
    if name == "Classifier":
        from flant5_imdb.predict import Classifier

        return Classifier
    raise AttributeError(name)
