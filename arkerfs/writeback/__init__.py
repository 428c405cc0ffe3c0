"""Write-back: the durable journal of pending changes (and, later, the pusher)."""
