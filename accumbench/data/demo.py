"""Synthetic, deterministic movie-review sentiment data for offline demos.

Pure standard library on purpose: benchmarks and tests must run without network
access or heavy dependencies. All randomness comes from one ``random.Random(seed)``
and only tuples/lists are iterated, so output does not depend on hash seeds.
"""

from __future__ import annotations

import random

DEMO_SIZE = 2400
DEMO_LABEL_NOISE = 0.08

POSITIVE_WORDS = (
    "brilliant", "superb", "delightful", "gripping", "moving", "charming",
    "clever", "stunning", "engaging", "heartfelt", "memorable", "witty",
    "beautiful", "compelling", "thrilling", "wonderful", "excellent",
    "inventive", "touching", "satisfying",
)
NEGATIVE_WORDS = (
    "dull", "boring", "clumsy", "tedious", "predictable", "lifeless",
    "confusing", "awful", "bland", "forgettable", "shallow", "messy",
    "painful", "sloppy", "flat", "tiresome", "weak", "pointless", "dreadful",
    "disappointing",
)
SUBJECTS = (
    "the plot", "the acting", "the soundtrack", "the director's pacing",
    "the dialogue", "the cinematography", "the ending", "the lead performance",
    "the script", "the visual effects", "the supporting cast", "the editing",
    "the humour", "the final act", "the set design", "the villain",
)
INTENSIFIERS = ("really", "truly", "incredibly", "genuinely", "remarkably", "utterly")
# Each negation flips the polarity of the adjective that follows it.
NEGATIONS = ("was not", "wasn't", "never felt", "was hardly", "did not seem")
OPENERS = ("", "", "", "Honestly, ", "I have to say that ", "In my opinion, ",
           "To be fair, ", "If I am being honest, ")
FILLERS = (
    "I watched it on a rainy Sunday with my brother.",
    "My friend had recommended it to me weeks ago, so I finally gave it a try.",
    "The cinema was half empty and someone behind us kept rustling a bag of popcorn.",
    "I went in knowing almost nothing about the story or the people who made it.",
    "It runs for a little over two hours, including the credits at the end.",
    "We streamed it at home after dinner because nothing else was on that night.",
    "The trailer had given me a rough idea of what to expect from the premise.",
    "I had read the novel it is based on back when I was in school.",
    "My partner fell asleep for a while somewhere around the middle of it.",
    "This is the third film from this studio that I have seen this year.",
    "The story follows a family that moves to a small town on the coast.",
    "Most of it was filmed on location in an old industrial city up north.",
    "I saw it at a late screening with a couple of colleagues from work.",
    "There is a short scene after the credits, so do not leave too early.",
    "The film is set over a single summer in the late nineteen eighties.",
    "We paused it halfway through to order some food and make tea.",
    "It was released quietly last spring without much of a marketing campaign.",
    "I watched the original version with subtitles rather than the dubbed one.",
    "A few people in my book club had already talked about it at length.",
    "The main character works as a night nurse in a busy city hospital.",
    "It is loosely inspired by events that happened several decades ago.",
    "My sister insisted that we watch it together during the holidays.",
    "I paid full price for the ticket at the multiplex near the station.",
    "The runtime felt about normal for a film of this kind and genre.",
    "Several scenes take place on a train crossing the country at night.",
    "I caught it on a long flight home, on a rather small seat-back screen.",
    "The cast includes a few faces I recognised from television series.",
    "It was the closing film at a local festival that I attend every autumn.",
)


def _clause(rng: random.Random, subject: str, lean: int) -> tuple[str, int]:
    """One opinion clause about `subject` and its signed polarity weight."""
    # Clauses mostly agree with the review's overall lean, but not always.
    polarity = lean if rng.random() < 0.7 else -lean
    adjective = rng.choice(POSITIVE_WORDS if polarity > 0 else NEGATIVE_WORDS)
    if rng.random() < 0.3:
        # Negation flips the meaning while keeping the surface keyword.
        return f"{subject} {rng.choice(NEGATIONS)} {adjective}", -polarity
    if rng.random() < 0.35:
        # Intensified opinions count double, so the label is not a plain vote.
        return f"{subject} was {rng.choice(INTENSIFIERS)} {adjective}", 2 * polarity
    return f"{subject} was {adjective}", polarity


def _opinion_sentence(rng: random.Random, lean: int) -> tuple[str, int]:
    """A simple, contrastive ("but") or concessive ("although") opinion sentence."""
    first, second = rng.sample(SUBJECTS, 2)
    text1, pol1 = _clause(rng, first, lean)
    form = rng.random()
    if form < 0.45:
        sentence, polarity = text1, pol1
    else:
        # Mixed reviews are common: the second clause tends to contrast the first.
        text2, pol2 = _clause(rng, second, -lean if rng.random() < 0.5 else lean)
        if form < 0.75:
            sentence, polarity = f"{text1}, but {text2}", pol1 + pol2
        else:
            sentence, polarity = f"although {text1}, {text2}", pol1 + pol2
    sentence = rng.choice(OPENERS) + sentence
    return sentence[0].upper() + sentence[1:] + ".", polarity


def _review(rng: random.Random) -> tuple[str, int]:
    """One review (1-10 sentences) and its true label from summed polarity."""
    lean = rng.choice((1, -1))
    n_sentences = rng.randint(1, 10)
    is_opinion = [rng.random() < 0.5 for _ in range(n_sentences)]
    if not any(is_opinion):
        is_opinion[rng.randrange(n_sentences)] = True
    sentences, score = [], 0
    for opinion in is_opinion:
        if opinion:
            text, polarity = _opinion_sentence(rng, lean)
            sentences.append(text)
            score += polarity
        else:
            sentences.append(rng.choice(FILLERS))
    if score == 0:
        # A verdict breaks ties so every review has a well-defined label.
        text, polarity = _clause(rng, "it", lean)
        sentences.append(f"Overall, {text}.")
        score += polarity
    return " ".join(sentences), int(score > 0)


def generate_demo_reviews(
    n: int = DEMO_SIZE, seed: int = 0, label_noise: float = DEMO_LABEL_NOISE
) -> dict[str, list]:
    """Returns {"text": [...str], "label": [...int 0/1]} (1 = positive)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        text, label = _review(rng)
        texts.append(text)
        labels.append(label)
    # Noise is drawn after all texts, so texts do not depend on label_noise.
    # Flipping an exact count keeps the noise ceiling precise (1 - label_noise).
    for i in rng.sample(range(n), round(n * label_noise)):
        labels[i] = 1 - labels[i]
    return {"text": texts, "label": labels}


# ---------------------------------------------------------------------------------------------------------------
# Sentence pairs: a synthetic 3-class entailment set (an offline stand-in for MNLI/RTE-like data).
#
# A premise tells of one event: someone made something, with some of six optional facts (the maker's age and
# mood, the place, the day, who it was for, the size of what was made). A hypothesis states one of those facts,
# plainly or negated, in words that may be synonyms of the premise's. Its label comes from the premise: the fact
# agrees with the premise (entailment), the premise gives that fact another, incompatible value (contradiction),
# or the premise does not mention that fact at all (neutral); a negated hypothesis swaps the first two.
# The hypothesis is drawn before the label and the premise is built to fit both, so neither text alone says
# anything about the label: every hypothesis (template, word, negation) is equally likely under all three labels,
# and the premise's set of stated facts and their values are too. Only comparing the two texts does.

DEMO_PAIRS_SIZE = 2400
DEMO_PAIRS_LABEL_NOISE = 0.05
PAIR_LABELS = ("entailment", "neutral", "contradiction")

# (names for the maker, past tense, past participle, base form, things made).
MAKERS = (
    (("chef", "cook"), "cooked", "cooked", "cook", ("dinner", "lunch", "soup", "stew")),
    (("baker",), "baked", "baked", "bake", ("cake", "pie", "loaf of bread", "tart")),
    (("carpenter", "woodworker"), "built", "built", "build", ("table", "bookshelf", "cabinet", "bench")),
    (("painter", "artist"), "painted", "painted", "paint", ("portrait", "mural", "landscape", "sign")),
    (("gardener",), "planted", "planted", "plant", ("hedge", "orchard", "flower bed", "vegetable patch")),
    (("tailor", "dressmaker"), "sewed", "sewn", "sew", ("coat", "dress", "quilt", "curtain")),
    (("potter",), "made", "made", "make", ("vase", "bowl", "jug", "teapot")),
    (("mechanic",), "repaired", "repaired", "repair", ("truck", "tractor", "van", "engine")),
    (("teacher",), "organised", "organised", "organise", ("concert", "picnic", "quiz", "exhibition")),
    (("fisherman", "angler"), "caught", "caught", "catch", ("fish", "tuna", "crab", "eel")),
    (("builder",), "built", "built", "build", ("shed", "wall", "barn", "garage")),
    (("knitter",), "knitted", "knitted", "knit", ("scarf", "blanket", "sweater", "shawl")),
)
# Each slot's values come in groups of synonyms; two different groups of one slot are incompatible.
PAIR_SLOTS = (
    ("age", (("old", "elderly"), ("young", "youthful"))),
    ("mood", (("cheerful", "happy", "joyful"), ("grumpy", "sad", "gloomy"))),
    ("size", (("large", "big", "huge"), ("small", "little", "tiny"))),
    ("place", (("harbour town", "port town"), ("mountain village", "hill village"), ("capital", "capital city"),
               ("river valley", "valley by the river"), ("desert town", "town in the desert"))),
    ("day", (("Monday",), ("Tuesday",), ("Wednesday",), ("Thursday",), ("Friday",), ("Saturday",), ("Sunday",))),
    ("beneficiary", (("the neighbours", "the people next door"), ("a wedding", "a wedding party"),
                     ("the local school", "the school"), ("the mayor", "the town mayor"),
                     ("a festival", "the summer festival"))),
)
# Hypothesis templates per slot, (plain, negated); slots share wordings ("The ... was ...", "This happened ...")
# so a template does not name the slot. {s}: the maker, {o}: the thing made, {v}/{p}/{b}: the verb's past
# tense/participle/base form, {w}: the stated value.
PAIR_TEMPLATES = (
    ("age", (("The {s} was {w}.", "The {s} was not {w}."), ("The {s} seemed {w}.", "The {s} did not seem {w}."))),
    ("mood", (("The {s} was {w}.", "The {s} was not {w}."), ("The {s} seemed {w}.", "The {s} did not seem {w}."))),
    ("size", (("The {o} was {w}.", "The {o} was not {w}."), ("It was a {w} {o}.", "It was not a {w} {o}."))),
    ("place", (("The {s} was in the {w}.", "The {s} was not in the {w}."),
               ("This happened in the {w}.", "This did not happen in the {w}."))),
    ("day", (("This happened on {w}.", "This did not happen on {w}."),
             ("The {o} was {p} on {w}.", "The {o} was not {p} on {w}."))),
    ("beneficiary", (("The {o} was for {w}.", "The {o} was not for {w}."),
                     ("The {s} {v} it for {w}.", "The {s} did not {b} it for {w}."))),
)
PAIR_NEGATION_RATE = 0.3
# Sentences that add length but no fact any hypothesis asks about.
PAIR_FILLERS = (
    "It had been a long week for everyone involved.",
    "The weather was mild and the streets were quiet.",
    "Nobody had planned anything special in advance.",
    "Word about it spread quickly among the locals.",
    "A few people stopped by to watch for a while.",
    "The work took most of the day to finish.",
    "Some of the tools had been borrowed from a friend.",
    "There had been a light rain earlier that morning.",
    "Everything had to be ready before sunset.",
    "Photographs of it were later shared online.",
    "The radio played quietly in the background the whole time.",
    "Money had been tight for months, so everything was done carefully.",
    "An apprentice helped with the first part of the job.",
    "It was not the first time something like this had been done there.",
    "The materials had arrived by post only the evening before.",
    "A reporter wrote a short piece about it afterwards.",
)


def _phrase(rng: random.Random, group: tuple[str, ...], like: str | None = None) -> str:
    """A word from a synonym group, the hypothesis's own word half the time when `like` is given."""
    return like if like is not None and rng.random() < 0.5 else rng.choice(group)


def _premise(rng: random.Random, maker: tuple, obj: str, facts: list[tuple[str, str]]) -> str:
    """One event sentence stating exactly `facts` ((slot, phrase) pairs), with fillers around it."""
    values = dict(facts)
    names, past = maker[0], maker[1]
    adjectives = [values[slot] for slot in ("mood", "age") if slot in values]
    mood_clause = ""
    if "mood" in values and rng.random() < 0.4:
        adjectives = adjectives[1:]
        mood_clause = f", who was feeling {values['mood']},"
    subject = " ".join(["the", *adjectives, rng.choice(names)])
    place_early = "place" in values and rng.random() < 0.5
    if place_early:
        subject += f" from the {values['place']}"
    subject += mood_clause
    size = [values["size"]] if "size" in values else []
    article = "an" if " ".join([*size, obj])[0] in "aeiou" else "a"
    sentence = f"{subject} {past} " + " ".join([article, *size, obj])
    if "beneficiary" in values:
        sentence += f" for {values['beneficiary']}"
    if "place" in values and not place_early:
        sentence += f" in the {values['place']}"
    if "day" in values:
        if rng.random() < 0.3:
            sentence = f"on {values['day']}, {sentence}"
        else:
            sentence += f" on {values['day']}"
    sentences = [sentence[0].upper() + sentence[1:] + "."]
    for filler in rng.sample(PAIR_FILLERS, rng.choice((0, 0, 1, 1, 2, 3))):
        sentences.insert(rng.randint(0, len(sentences)), filler)
    return " ".join(sentences)


def _pair(rng: random.Random) -> tuple[str, str, str]:
    """One (premise, hypothesis, label): the hypothesis first, then the label, then a premise to fit both."""
    maker = rng.choice(MAKERS)
    obj = rng.choice(maker[4])
    slot_index = rng.randrange(len(PAIR_SLOTS))
    slot, groups = PAIR_SLOTS[slot_index]
    group_index = rng.randrange(len(groups))
    word = rng.choice(groups[group_index])
    negated = rng.random() < PAIR_NEGATION_RATE
    plain, negation = rng.choice(PAIR_TEMPLATES[slot_index][1])
    hypothesis = (negation if negated else plain).format(
        s=rng.choice(maker[0]), o=obj, v=maker[1], p=maker[2], b=maker[3], w=word)
    hypothesis = hypothesis[0].upper() + hypothesis[1:]

    label = rng.choice(PAIR_LABELS)
    # The premise states 1-5 of the six facts, as many whatever the label; the asked-about one is among them
    # unless the label is neutral. Either way each set of that size is equally likely, so the premise's facts
    # do not give the label away.
    n_facts = rng.randint(1, len(PAIR_SLOTS) - 1)
    others = [i for i in range(len(PAIR_SLOTS)) if i != slot_index]
    if label == "neutral":
        chosen = rng.sample(others, n_facts)
    else:
        chosen = [slot_index, *rng.sample(others, n_facts - 1)]
    facts = []
    for i in sorted(chosen):
        other_slot, other_groups = PAIR_SLOTS[i]
        if i != slot_index:
            facts.append((other_slot, rng.choice(rng.choice(other_groups))))
        elif (label == "entailment") != negated:
            facts.append((slot, _phrase(rng, groups[group_index], like=word)))
        else:
            clash = rng.choice([g for j, g in enumerate(groups) if j != group_index])
            facts.append((slot, rng.choice(clash)))
    return _premise(rng, maker, obj, facts), hypothesis, label


def generate_demo_pairs(
    n: int = DEMO_PAIRS_SIZE, seed: int = 0, label_noise: float = DEMO_PAIRS_LABEL_NOISE
) -> dict[str, list]:
    """Returns {"premise": [...str], "hypothesis": [...str], "label": [...str]}, each label one of PAIR_LABELS.

    Classes are drawn uniformly (about a third each). Label noise then moves an exact round(n * label_noise)
    labels, uniformly, to one of the two other classes, so the noise ceiling is precisely 1 - label_noise.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    rng = random.Random(seed)
    premises, hypotheses, labels = [], [], []
    for _ in range(n):
        premise, hypothesis, label = _pair(rng)
        premises.append(premise)
        hypotheses.append(hypothesis)
        labels.append(label)
    # As for the reviews: noise is drawn after all texts, so texts do not depend on label_noise.
    for i in rng.sample(range(n), round(n * label_noise)):
        labels[i] = rng.choice([label for label in PAIR_LABELS if label != labels[i]])
    return {"premise": premises, "hypothesis": hypotheses, "label": labels}
