#!/usr/bin/env python3
"""How boot.py reads a serial console: what a boot scenario matches its markers against."""
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import console_lines  # noqa: E402

# From a CI boot (minimal managed-user) that missed its prompt: nbde-unlock's own status
# line, written to /dev/kmsg by another thread, landed inside the prompt.
CONSOLE = ("NBDE-INIT: starting nbde-unlock\r\n"
           "[    3.326029] nbde-unlock: /dev/vda: unlocking as luks-6e6b\r\n"
           "Passphrase for [    3.392686] nbde-unlock: /dev/vda: asking 1 binding(s)\r\n"
           "/dev/vda (or wait for the network): [    3.565547] nbde-unlock: /dev/vda: refused "
           "by policy (disabled) at http://10.0.2.100; retry in 1 s\r\n"
           "[    3.628776] IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready\r\n")
PROMPT = r"Passphrase for /dev/\S+"


class ConsoleLines(unittest.TestCase):
    def test_a_prompt_with_a_kernel_message_inside_is_whole_again(self):
        lines, rest = console_lines(CONSOLE)
        self.assertEqual(rest, "Passphrase for /dev/vda (or wait for the network): ")
        self.assertTrue(re.search(PROMPT, rest))
        self.assertEqual(lines, [
            "NBDE-INIT: starting nbde-unlock",
            "[    3.326029] nbde-unlock: /dev/vda: unlocking as luks-6e6b",
            "[    3.392686] nbde-unlock: /dev/vda: asking 1 binding(s)",
            "[    3.565547] nbde-unlock: /dev/vda: refused by policy (disabled) at "
            "http://10.0.2.100; retry in 1 s",
            "[    3.628776] IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
        ])

    def test_the_same_lines_however_the_console_is_cut_into_reads(self):
        text = CONSOLE + "typed\r\nNBDE-ROOT-MOUNTED\r\n"
        whole = console_lines(text)
        for size in (1, 2, 7, 64):
            lines, rest = [], ""
            for at in range(0, len(text), size):
                more, rest = console_lines(rest + text[at:at + size])
                lines += more
            self.assertEqual((lines, rest), whole, f"reads of {size}")
        self.assertEqual(whole[0][-2:], ["Passphrase for /dev/vda (or wait for the network): typed",
                                         "NBDE-ROOT-MOUNTED"])

    def test_brackets_that_are_not_a_kernel_stamp_stay_in_the_line(self):
        lines, rest = console_lines("[  OK  ] Reached target cryptsetup.target.\r\n"
                                    "dracut-initqueue[312]: ok\r\n[   1.5")
        self.assertEqual(lines, ["[  OK  ] Reached target cryptsetup.target.",
                                 "dracut-initqueue[312]: ok"])
        self.assertEqual(rest, "[   1.5")


if __name__ == "__main__":
    unittest.main()
