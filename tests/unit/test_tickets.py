"""WebSocket tickets: one socket, once, within the ticket's time, for whom it was issued; the clock injected."""

from __future__ import annotations

import pytest

from tests.support import FakeClock
from viewer_api.tickets import TicketBook, TicketRefused


def test_a_ticket_is_redeemed_once_by_its_holder_within_its_time() -> None:
    clock = FakeClock()
    book: TicketBook[str] = TicketBook(ttl_s=30, now=clock)
    ticket = book.issue("alice")
    assert len(ticket) >= 40 and book.issue("alice") != ticket          # 32 random bytes, url-safe
    clock.advance(29.9)
    assert book.redeem(ticket) == "alice"
    with pytest.raises(TicketRefused, match="already used") as info:
        book.redeem(ticket)
    assert info.value.holder == "alice"


def test_an_expired_forged_or_forgotten_ticket_says_why() -> None:
    clock = FakeClock()
    book: TicketBook[str] = TicketBook(ttl_s=30, remember_s=300, now=clock)
    late, forgotten = book.issue("bob"), book.issue("carol")
    clock.advance(30.1)
    with pytest.raises(TicketRefused, match="expired: issued 30 s ago, valid for 30 s") as info:
        book.redeem(late)
    assert info.value.holder == "bob"
    for forged in ("", "x" * 43):
        with pytest.raises(TicketRefused, match="unknown ticket") as info:
            book.redeem(forged)
        assert info.value.holder is None
    clock.advance(300)
    with pytest.raises(TicketRefused, match="unknown ticket"):             # swept: no longer remembered
        book.redeem(forgotten)
    assert len(book) == 0


def test_the_book_is_bounded_and_drops_the_oldest_first() -> None:
    book: TicketBook[int] = TicketBook(capacity=3, now=FakeClock())
    tickets = [book.issue(i) for i in range(5)]
    assert len(book) == 3
    with pytest.raises(TicketRefused, match="unknown ticket"):
        book.redeem(tickets[1])
    assert [book.redeem(t) for t in tickets[2:]] == [2, 3, 4]
