"""The queries an approximate index is tuned on: the kinds of query users send.

An inverted file probes only some of its lists, so how many it must probe (``nprobe``) and
how many candidates an index of 8-bit codes must re-score depend on where queries lie:

- **near** queries, image-to-image ("more like this", an uploaded photo): a stored vector
  plus noise, close to the data;
- **far** queries, text-to-image: a caption lies far from the images it matches (top-1
  cosine about 0.21 with the ``default`` aligner, against 0.71 for the near queries), and
  its nearest images are spread over many lists. Tuning on near queries alone left text
  queries at recall@10 0.44 on a 100,000-vector index (docs/search.md).

Far queries are :data:`PROMPTS` encoded by the index's own aligner when the build has one;
otherwise (a rebuild from the catalog, an import of foreign embeddings, a benchmark)
:func:`stand_in` draws model-free queries that are as far from the data as text is: random
directions.
Numpy only: the other ann modules call faiss.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: A text encoder (texts -> normalized vectors), the aligner's: far tuning queries are real text.
TextEncoder = Callable[[list[str]], np.ndarray]

#: Near queries per tuning, and far ones.
NEAR_COUNT = 500
FAR_COUNT = 300
#: Noise per dimension added to stored vectors for near queries (cosine about 0.7 to their source at 384-d).
NEAR_NOISE = 0.05

_OBJECTS = (
    "a dog", "a cat", "a horse", "a bird", "a cow", "a sheep", "a car", "a bicycle", "a motorcycle",
    "a bus", "a train", "a boat", "an aeroplane", "a chair", "a sofa", "a table", "a bed", "a lamp",
    "a cup of coffee", "a bowl of fruit", "a pizza", "a cake", "a bottle", "a book", "a laptop",
    "a phone", "a clock", "a guitar", "a piano", "a flower", "a tree", "a house", "a church",
    "a bridge", "a tower", "a mountain", "a lake", "a river", "a beach", "a road", "a door",
    "a window", "a shoe", "a dress", "a coat", "a hat", "a bag", "an umbrella", "a kite", "a ball",
)
_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "pink", "brown", "grey")
_SCENES = (
    "a busy city street", "a quiet village", "a forest path", "a snowy mountain", "a sandy beach",
    "a harbour with boats", "a farm field", "a desert", "a kitchen", "a living room", "an office",
    "a classroom", "a market", "a park", "a garden", "a stadium", "a train station", "an airport",
    "a museum", "a restaurant", "a bedroom", "a bathroom", "a library", "a playground", "a waterfall",
)
_TIMES = ("at night", "at sunset", "in the rain", "in fog", "on a sunny day", "in winter", "in autumn")
_PEOPLE = (
    "a man", "a woman", "a child", "two people", "a group of friends", "an old man", "a young woman",
    "a family", "a crowd", "a baby",
)
_ACTIVITIES = (
    "riding a bicycle", "playing football", "cooking dinner", "reading a book", "walking a dog",
    "swimming", "running", "dancing", "eating lunch", "taking a photo", "playing the guitar",
    "sleeping", "skiing", "surfing", "climbing a rock", "painting a picture", "talking on the phone",
    "waiting for a bus", "sitting on a bench", "laughing",
)
_STYLES = (
    "a black and white photo of", "a close-up of", "a blurry photo of", "an aerial view of",
    "a drawing of", "a dark photo of", "a bright photo of", "a painting of",
)
_OTHER = (
    "a sign that says open", "a page of handwritten text", "a map", "a screenshot of a web page",
    "a pile of old newspapers", "fireworks over a river", "a plate of food on a wooden table",
    "a sunset over the sea", "stars in the night sky", "a rainbow over hills", "clouds from above",
    "a shelf full of toys", "a traffic jam", "a wedding", "a birthday party", "a concert on stage",
    "a portrait of a person's face", "a selfie", "a group photo", "an empty room", "a broken window",
    "ice on a pond", "autumn leaves on the ground", "a field of sunflowers", "a sleeping puppy",
    "graffiti on a brick wall", "a vintage car", "a red double-decker bus", "a lighthouse on a cliff",
    "a bowl of soup", "a glass of red wine", "a cup of tea", "a loaf of bread", "a bunch of bananas",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _prompts() -> tuple[str, ...]:
    # Fixed combinations, not random ones: the list must be the same on every machine and
    # run, so that an index's tuning can be reproduced. A stride through each product keeps
    # it varied (every colour, scene and activity appears) at a few hundred prompts.
    out = list(_OBJECTS) + list(_OTHER)
    out += [f"a photo of {s}" for s in _SCENES]
    out += [f"{_article(c)} {c} {o.split(' ', 1)[1]}" for c, o in itertools.islice(itertools.product(_COLOURS, _OBJECTS), 0, None, 7)]
    out += [f"{s} {t}" for s, t in itertools.islice(itertools.product(_SCENES, _TIMES), 0, None, 4)]
    out += [f"{p} {a}" for p, a in itertools.islice(itertools.product(_PEOPLE, _ACTIVITIES), 0, None, 4)]
    out += [f"{s} {o}" for s, o in itertools.islice(itertools.product(_STYLES, _OBJECTS), 0, None, 9)]
    return tuple(dict.fromkeys(out))


#: What users type: objects, scenes, colours, people and what they do, styles of picture.
PROMPTS = _prompts()


@dataclass
class Probes:
    """Query sets an index is tuned on, by kind ("near", "far"), and what the far ones are."""

    sets: dict[str, np.ndarray]
    far_source: str

    def described(self) -> str:
        near = len(self.sets.get("near", ()))
        far = len(self.sets.get("far", ()))
        return f"{near} image-like queries (stored vectors plus noise) and {far} {self.far_source}"


def near(sample: np.ndarray, count: int = NEAR_COUNT, seed: int = 1) -> np.ndarray:
    """Perturbed copies of sampled vectors: image-to-image queries, near the data."""
    rng = np.random.default_rng(seed)
    picked = sample[rng.choice(len(sample), min(count, len(sample)), replace=False)]
    return _unit(picked + rng.normal(0, NEAR_NOISE, picked.shape).astype(np.float32))


def stand_in(dim: int, count: int = FAR_COUNT, seed: int = 2) -> np.ndarray:
    """Model-free far queries: random directions, uniform on the unit sphere.

    Measured against real text queries from ``default``, on real photos and on clustered
    benchmark vectors (docs/search.md#tuning-on-the-queries-users-send): random directions
    needed the same ``nprobe`` as the text queries, while draws from a Gaussian shaped like
    the data (its mean and covariance) needed fewer: they land among the data, where text
    does not. Where the real far queries are nearer than random, this errs on the safe side
    (more lists probed).
    """
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(count, dim)).astype(np.float32))


def text_queries(encode_texts: TextEncoder) -> np.ndarray:
    """:data:`PROMPTS` encoded by an aligner's text encoder: real far queries."""
    return _unit(np.asarray(encode_texts(list(PROMPTS)), np.float32))


def make(
    sample: np.ndarray, encode_texts: TextEncoder | None = None, spec: str | None = None,
    near_count: int = NEAR_COUNT,
) -> Probes:
    """Near queries from `sample`, and far ones: prompts through `encode_texts`, else the stand-in."""
    if encode_texts is not None:
        far, source = text_queries(encode_texts), f"text prompts encoded by {spec or 'the index aligner'}"
    else:
        far, source = stand_in(sample.shape[1]), "random directions standing in for text queries (no aligner at hand)"
    return Probes({"near": near(sample, near_count), "far": far}, source)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
