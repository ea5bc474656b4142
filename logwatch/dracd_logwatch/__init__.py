"""dracd-logwatch: turn successful-login lines of mail logs into DRAC ADDs.

Most MRAs are not DRAC-aware. Like pop-before-smtp did, this feeder follows
their logs (files, a syslog socket or journald) and authorizes the client
address of every successful POP3/IMAP login, through dracd's admin socket
(with per-preset lifetimes) or the DRAC protocol.

The data flow is one straight line, one module per step::

    follow / sources --> record (program, pid, message) --> presets (login?)
        --> policy (valid? trusted? seen? prefix?) --> target (ADD)

Security rests on :mod:`record`: the syslog header is parsed once, and a
preset only looks at lines whose *program* (and PID) are its own, so text
that other programs write into the log (an SMTP client's HELO, a
username) can never authorize anything.
"""
