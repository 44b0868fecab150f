module github.com/postern/postern/api

go 1.26.0
