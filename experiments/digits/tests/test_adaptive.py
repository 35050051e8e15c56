"""experiments/digits/adaptive.py replays --retry_below: which candidates each rule trains and which token it
keeps, by run.py's own choice (selection.best_offer) among the candidates trained so far."""

from experiments.digits.adaptive import best_of_first, rule_choices


def offer(candidate, epoch, selection, loss=1.0):
    return dict(candidate=candidate, epoch=epoch, selection=selection, loss=loss)


OFFERED = [offer(0, None, 0.50), offer(0, 9, 0.60), offer(1, None, 0.55), offer(1, 9, 0.70), offer(2, None, 0.90)]


def test_the_best_so_far_is_chosen_among_the_candidates_trained():
    assert [best_of_first(OFFERED, k) for k in range(3)] == [1, 3, 4]


def test_each_rule_stops_at_the_first_candidate_that_reaches_its_margin():
    # The best of candidate 0 reaches 5 points, not 10; only the best of three reaches 10.
    short = [[None, "short"], [None, "short"], [None, None]]
    chosen = rule_choices(OFFERED, short, [5, 10], [2, 3])
    assert chosen["one run"] == (1, 1)
    assert chosen["candidates 2"] == (3, 2) and chosen["candidates 3"] == (4, 3)
    assert chosen["retry 5, 2"] == (1, 1) and chosen["retry 5, 3"] == (1, 1)
    assert chosen["retry 10, 2"] == (3, 2)  # K reached: the best of the two trained
    assert chosen["retry 10, 3"] == (4, 3)
