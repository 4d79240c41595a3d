"""DreamBench evaluation prompts (google/dreambooth `dataset/prompts_and_classes.txt`, CC-BY-4.0).

Kept in code rather than parsed from the data folder so that the evaluation protocol is fixed by the
harness version, not by whichever copy of the dataset a user points at. `{token} {cls}` are filled with the
identifier token and the class word; CLIP-T scores the prompt with the identifier removed.
"""

from __future__ import annotations

_SHARED_HEAD = [
    "a {token} {cls} in the jungle",
    "a {token} {cls} in the snow",
    "a {token} {cls} on the beach",
    "a {token} {cls} on a cobblestone street",
    "a {token} {cls} on top of pink fabric",
    "a {token} {cls} on top of a wooden floor",
    "a {token} {cls} with a city in the background",
    "a {token} {cls} with a mountain in the background",
    "a {token} {cls} with a blue house in the background",
    "a {token} {cls} on top of a purple rug in a forest",
]
_SHARED_TAIL = [
    "a red {token} {cls}",
    "a purple {token} {cls}",
    "a shiny {token} {cls}",
    "a wet {token} {cls}",
    "a cube shaped {token} {cls}",
]

OBJECT_PROMPTS = [
    *_SHARED_HEAD,
    "a {token} {cls} with a wheat field in the background",
    "a {token} {cls} with a tree and autumn leaves in the background",
    "a {token} {cls} with the Eiffel Tower in the background",
    "a {token} {cls} floating on top of water",
    "a {token} {cls} floating in an ocean of milk",
    "a {token} {cls} on top of green grass with sunflowers around it",
    "a {token} {cls} on top of a mirror",
    "a {token} {cls} on top of the sidewalk in a crowded street",
    "a {token} {cls} on top of a dirt road",
    "a {token} {cls} on top of a white rug",
    *_SHARED_TAIL,
]

LIVE_PROMPTS = [
    *_SHARED_HEAD,
    "a {token} {cls} wearing a red hat",
    "a {token} {cls} wearing a santa hat",
    "a {token} {cls} wearing a rainbow scarf",
    "a {token} {cls} wearing a black top hat and a monocle",
    "a {token} {cls} in a chef outfit",
    "a {token} {cls} in a firefighter outfit",
    "a {token} {cls} in a police outfit",
    "a {token} {cls} wearing pink glasses",
    "a {token} {cls} wearing a yellow shirt",
    "a {token} {cls} in a purple wizard outfit",
    *_SHARED_TAIL,
]

PROMPT_LISTS = {"object": OBJECT_PROMPTS, "live": LIVE_PROMPTS}


def evaluation_prompts(
    kind: str, token: str, class_word: str, templates: list[str] | None = None
) -> list[tuple[str, str]]:
    """The evaluation prompts of a subject as (prompt with identifier, prompt without it) pairs: the 25 DreamBench
    prompts of its kind, or the subject's own `templates` (`subject.prompts`, with `{token}` and `{cls}`).

    The second element is what CLIP-T scores against (DreamBooth paper protocol: identifier removed). A template
    without `{token}` asks for an ordinary member of the class: its images show whether the subject leaks into
    the class word (language drift).
    """
    if templates is None and kind not in PROMPT_LISTS:
        raise ValueError(f"unknown subject kind {kind!r}; expected one of {sorted(PROMPT_LISTS)}")
    pairs = []
    for template in templates if templates is not None else PROMPT_LISTS[kind]:
        with_token = template.format(token=token, cls=class_word)
        clean = " ".join(template.format(token="", cls=class_word).split())
        pairs.append((with_token, clean))
    return pairs
