"""experiments/digits/replay_selection.py replays the selection rules: the same choice as run.py's
(selection.best_offer), restricted to each rule's pool of tokens."""

from experiments.digits.replay_selection import rules


def offer(candidate, epoch, selection, loss=1.0):
    return dict(candidate=candidate, epoch=epoch, selection=selection, loss=loss)


def test_each_rule_chooses_by_selection_accuracy_within_its_pool():
    offered = [
        offer(0, None, 0.50),
        offer(0, 9, 0.60),  # the token after epoch 9's update: 10 epochs trained
        offer(0, 19, 0.70),
        offer(1, None, 0.55, loss=0.5),
        offer(1, 9, 0.80),
        offer(2, None, 0.55, loss=0.4),  # ties with candidate 1's kept token: the lower loss wins
    ]
    pick = rules(offered, [10, 20])
    assert pick["single"] == 0  # candidate 0's kept token, whatever the others score
    assert pick["kept"] == 5
    assert pick["every 10"] == 4  # candidate 1's snapshot after 10 epochs
    assert pick["every 20"] == 2  # after 10 epochs is not in every 20
    assert pick["single, every 10"] == 2 and pick["single, every 20"] == 2


def test_a_kept_token_wins_a_tie_with_a_snapshot():
    offered = [offer(0, None, 0.6), offer(0, 9, 0.6)]
    assert rules(offered, [10])["single, every 10"] == 0
