"""Scenarios: which sites a phantom data set has, their class mix, background markers and splits.

``default``: ``sites`` acquisition styles (``site_styles``), every class ``per_class`` times at every site,
the optional class marker (``class_marker_rate``), an empty ``split`` column.

``confounded``: the way real COVID/TB collections were assembled, where class, source hospital and the
hospital's background habits go together. Three training sites (the styles of site_a, site_b and site_c)
each contribute mostly one class (``DOMINANT`` of their images) and stamp their own marker, mostly on that
class (``MARKER_ON_DOMINANT``) and rarely on the others (``MARKER_ON_OTHERS``). Three external sites, all in
the style of site_d (so that they differ from each other only in their markers), have a uniform class mix:
``external_clean`` carries no marker, ``external_unbiased`` the three markers independently of the class,
``external_reversed`` each class carries another class's marker. Training sites are split train/val/test
(patient-grouped, stratified by class and site), external sites are test only. See docs/phantom.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .lesions import LABELS
from .sites import SITE_TABLE, SiteStyle

SCENARIOS = ("default", "confounded")

DOMINANT = 0.70            # share of a training site's images in its dominant class (the rest split evenly)
MARKER_ON_DOMINANT = 0.90  # probability of the site marker on an image of the site's dominant class ("medium")
MARKER_ON_OTHERS = 0.10    # ... on the site's other classes
#: the share of marked images on every training site (0.7 * 0.9 + 0.3 * 0.1); external_unbiased uses it
MARKED_SHARE = DOMINANT * MARKER_ON_DOMINANT + (1 - DOMINANT) * MARKER_ON_OTHERS


@dataclass(frozen=True)
class Severity:
    """How strongly the confounded scenario's site markers give the class away: the marker's side as a fraction
    of the image side, its intensity in the processed [0, 1] image (drawn as max(image, contrast) on its
    strokes), and the probability that an image of a site's dominant class carries it (1 − rate on the site's
    other classes; external_reversed uses the same rate, external_unbiased the resulting marked share)."""

    size: float = 0.05
    contrast: float = 1.0
    rate: float = MARKER_ON_DOMINANT

    def validate(self) -> None:
        if not 0.01 <= self.size <= 0.25:
            raise ValueError(f"marker size must be in [0.01, 0.25] of the image side, got {self.size}")
        if not 0.05 <= self.contrast <= 1.0:
            raise ValueError(f"marker contrast must be in [0.05, 1], got {self.contrast}")
        if not 0.5 <= self.rate <= 1.0:
            raise ValueError(f"marker rate must be in [0.5, 1] (the dominant class must carry it more often than "
                             f"the others), got {self.rate}")

    @property
    def marked_share(self) -> float:
        """The share of marked images on every training site."""
        return DOMINANT * self.rate + (1 - DOMINANT) * (1 - self.rate)


#: named severities of ``isnet phantom --scenario confounded --severity``; "medium" is the scenario's default
SEVERITIES = {"low": Severity(size=0.03, contrast=0.5, rate=0.7),
              "medium": Severity(),
              "high": Severity(size=0.08, contrast=1.0, rate=1.0)}
#: the site marker of each class's training site; external_reversed puts it on the next class instead
CLASS_SHAPE = {"covid": "circle", "tb": "triangle", "normal": "square"}
RANDOM = "random"          # marker cell: one of the three shapes, chosen independently of the class


@dataclass(frozen=True)
class SitePlan:
    """One site of a scenario: acquisition style, class mix, markers (per class in ``LABELS`` order: (shape
    or "" or ``RANDOM``, probability)), and whether it is an external (test-only) site."""

    style: SiteStyle
    mix: tuple[float, ...]
    markers: tuple[tuple[str, float], ...]
    external: bool = False

    @property
    def name(self) -> str:
        return self.style.name


def _mix(dominant: str) -> tuple[float, ...]:
    other = (1 - DOMINANT) / (len(LABELS) - 1)
    return tuple(DOMINANT if c == dominant else other for c in LABELS)


def _training_site(style: SiteStyle, dominant: str, rate: float) -> SitePlan:
    shape = CLASS_SHAPE[dominant]
    markers = tuple((shape, rate if c == dominant else 1 - rate) for c in LABELS)
    return SitePlan(style, _mix(dominant), markers)


def _reversed_shape(label: str) -> str:
    """The marker of the next class in ``LABELS`` (normal gets covid's, covid gets tb's, tb gets normal's)."""
    return CLASS_SHAPE[LABELS[(LABELS.index(label) + 1) % len(LABELS)]]


UNIFORM = tuple(1 / len(LABELS) for _ in LABELS)
EXTERNAL_STYLE = SITE_TABLE[3]


def confounded_plan(severity: Severity = Severity()) -> tuple[SitePlan, ...]:
    """The confounded scenario's sites with markers drawn at ``severity``'s rate (size and contrast are applied
    when the markers are drawn)."""
    rate = severity.rate
    return (
        _training_site(SITE_TABLE[0], "covid", rate),
        _training_site(SITE_TABLE[1], "tb", rate),
        _training_site(SITE_TABLE[2], "normal", rate),
        SitePlan(replace(EXTERNAL_STYLE, name="external_clean"), UNIFORM, tuple(("", 0.0) for _ in LABELS), True),
        SitePlan(replace(EXTERNAL_STYLE, name="external_unbiased"), UNIFORM,
                 tuple((RANDOM, severity.marked_share) for _ in LABELS), True),
        SitePlan(replace(EXTERNAL_STYLE, name="external_reversed"), UNIFORM,
                 tuple((_reversed_shape(c), rate) for c in LABELS), True),
    )


CONFOUNDED: tuple[SitePlan, ...] = confounded_plan()


def class_counts(mix: tuple[float, ...], total: int) -> list[int]:
    """Images per class of a site with ``total`` images: ``mix`` rounded by largest remainder (sums to total)."""
    raw = [m * total for m in mix]
    counts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts
