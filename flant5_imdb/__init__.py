"""Fine-tune FLAN-T5 on IMDB sentiment with a hand-written Accelerate loop, and measure what it costs."""

__version__ = "0.1.0"
