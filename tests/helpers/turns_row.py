"""A row of `test_a_row_killed_while_waiting_for_its_turn_stops_no_other`, in a module of its own: a spawned
process imports only this and `bench.clocks`, not the test module and all it imports."""


def take_turns(index: int, turns, waiting, go_on, done) -> None:
    """Three steps in turn; row 1 says when it is about to wait for its first turn (where it is killed), and
    row 0 holds the first turn until then."""
    if index == 1:
        waiting.set()
    turns.join(index)
    if index == 0:
        go_on.wait(60)
    for _ in range(3):
        turns.pass_on()
    done.put((index, turns.passed_at))
    turns.leave()
