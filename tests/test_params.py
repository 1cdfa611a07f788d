from convroute.params import make_params


def test_the_two_depthwise_meanings():
    plain = make_params((1, 8, 6, 6), (8, 1, 3, 3), padding=1, groups=8)
    multiplier = make_params((1, 8, 6, 6), (16, 1, 3, 3), padding=1, groups=8)
    grouped = make_params((1, 8, 6, 6), (8, 2, 3, 3), padding=1, groups=4)
    transposed = make_params((1, 8, 6, 6), (8, 1, 3, 3), groups=8, transposed=True)
    assert plain.is_depthwise and plain.is_depthwise_without_multiplier
    assert multiplier.is_depthwise and not multiplier.is_depthwise_without_multiplier
    for p in (grouped, transposed):
        assert not p.is_depthwise and not p.is_depthwise_without_multiplier
