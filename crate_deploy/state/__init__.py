"""What a render and a launch leave behind for the commands that follow."""
