module warren/guest

go 1.24
