"""`make bench`: georouter and its edge measured against gdnsd, PowerDNS and nginx."""
