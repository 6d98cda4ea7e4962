"""How tabletop tasks are asked: training phrasings and held-out rewordings, from templates per goal verb.

Every task gets several training phrasings (the first is its canonical
instruction) and a disjoint set of held-out rewordings that no demo, SFT batch
or rollout ever sees; the suite's ``paraphrase`` split asks the seen tasks with
the held-out ones. Training and held-out templates use different wordings, so
no held-out string can equal a training string of any task (a test checks it
over the whole catalogue).
"""
from __future__ import annotations

#: verb -> templates; ``{o}``: the object phrase, ``{t}``: the target's name
TRAIN_TEMPLATES = {
    "lift": ("pick up the {o}", "lift the {o}", "grab the {o} and lift it up"),
    "push_front": ("push the {o} to the front", "slide the {o} to the front", "push the {o} forward"),
    "place_in": ("put the {o} in the {t}", "place the {o} into the {t}", "drop the {o} in the {t}"),
    "place_on": ("put the {o} on the {t}", "place the {o} on top of the {t}", "set the {o} down on the {t}"),
}
HELD_OUT_TEMPLATES = {
    "lift": ("raise the {o} off the table", "take hold of the {o} and hold it up high"),
    "push_front": ("shove the {o} toward the near edge of the table", "nudge the {o} towards the camera"),
    "place_in": ("move the {o} inside the {t}", "load the {o} into the {t}"),
    "place_on": ("move the {o} onto the {t}", "rest the {o} upon the {t}"),
}
#: the spatial family names the object by a relation: "pick up the red bowl <relation> and place it on the plate"
RELATION_TRAIN_TEMPLATES = {
    "place_on": ("pick up the {o} and place it on the {t}", "put the {o} on the {t}",
                 "take the {o} and set it on the {t}"),
}
RELATION_HELD_OUT_TEMPLATES = {
    "place_on": ("move the {o} onto the {t}", "grasp the {o} and rest it upon the {t}"),
}


def phrasings(verb: str, obj: str, target: str | None = None,
              relational: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(training phrasings, held-out phrasings)`` of "``verb`` the ``obj`` (onto/into ``target``)".

    ``relational``: ``obj`` carries a relation ("red bowl behind the mug"), asked
    with the spatial family's templates where it has its own.
    """
    train, held = TRAIN_TEMPLATES, HELD_OUT_TEMPLATES
    if relational and verb in RELATION_TRAIN_TEMPLATES:
        train, held = RELATION_TRAIN_TEMPLATES, RELATION_HELD_OUT_TEMPLATES
    if verb not in train:
        raise KeyError(f"no phrasing templates for verb {verb!r}")

    def fill(templates: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t.format(o=obj, t=target) for t in templates)

    return fill(train[verb]), fill(held[verb])


__all__ = ["HELD_OUT_TEMPLATES", "RELATION_HELD_OUT_TEMPLATES", "RELATION_TRAIN_TEMPLATES", "TRAIN_TEMPLATES",
           "phrasings"]
