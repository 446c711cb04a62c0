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
