"""Arithmetic questions in the form of BIG-bench's ``arithmetic`` task, generated here from a seed, so the
generative suite needs no download for them (PyPI no longer serves the BIG-bench sdist that held the original
examples; the questions are not those, so scores are comparable in kind, not row by row).

    input   "What is {a} {plus | minus | times | divided by} {b}?"
    target  the exact integer result (division: b divides a)
    target_scores  the result (1) against 4 distinct wrong numbers drawn uniformly from the operation's range of
                   results and the two words "banana" and "house" (0), as BIG-bench's multiple-choice form

Operands of ``digits`` d are uniform in [0, 10^d); a division's dividend is uniform among the composite numbers
in [4, 10^d) and its divisor uniform among the dividend's divisors other than 1 and itself (no question is
answered by copying a number). Questions repeat-free; ``examples`` of them, or every distinct
question when fewer exist.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable

from merging.errors import MergeError

OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b,
    "divided by": lambda a, b: a // b}
WORDS = ("banana", "house")
WRONG = 4
VERSION = 1  # bump when the procedure changes: prepared splits carry it in their recipe and are rebuilt


def result_range(operation: str, digits: int) -> tuple[int, int]:
    """The smallest and largest result of ``operation`` on operands of ``digits`` digits."""
    top = 10 ** digits - 1
    return {"plus": (0, 2 * top), "minus": (-top, top), "times": (0, top * top), "divided by": (2, top // 2)}[operation]


def operands(operation: str, digits: int, rng: random.Random) -> tuple[int, int]:
    if operation == "divided by":
        while True:
            a = rng.randrange(4, 10 ** digits)
            small = [b for b in range(2, math.isqrt(a) + 1) if a % b == 0]
            divisors = sorted({*small, *(a // b for b in small)})
            if divisors:
                return a, rng.choice(divisors)
    return rng.randrange(10 ** digits), rng.randrange(10 ** digits)


def check_arithmetic(operation: str, digits: int, where: str = "arithmetic") -> None:
    """A MergeError naming ``where`` unless ``operation`` is known and ``digits`` is 2 to 6."""
    if operation not in OPERATIONS:
        raise MergeError(f"{where}: operation '{operation}' unknown; known: {', '.join(OPERATIONS)}")
    if not isinstance(digits, int) or not 2 <= digits <= 6:
        raise MergeError(f"{where}: digits {digits!r}, expected an integer from 2 to 6")


def arithmetic_task(operation: str, digits: int, examples: int, seed: str) -> dict:
    """A BIG-bench-style task dict ``{"examples": [{"input", "target", "target_scores"}]}`` (see the module)."""
    check_arithmetic(operation, digits)
    rng = random.Random(seed)
    low, high = result_range(operation, digits)
    seen: set[tuple[int, int]] = set()
    out = []
    for _ in range(20 * examples):  # 20 draws a question: fewer are found only where few distinct ones exist
        if len(out) == examples:
            break
        a, b = operands(operation, digits, rng)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        answer = OPERATIONS[operation](a, b)
        wrong: set[int] = set()
        while len(wrong) < WRONG:
            x = rng.randint(low, high)
            if x != answer:
                wrong.add(x)
        choices = [str(answer), *map(str, sorted(wrong)), *WORDS]
        rng.shuffle(choices)
        out.append({"input": f"What is {a} {operation} {b}?", "target": str(answer),
                    "target_scores": {c: int(c == str(answer)) for c in choices}})
    return {"examples": out}
