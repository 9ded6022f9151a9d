module example.invalid/snowlease/client/go

go 1.19
