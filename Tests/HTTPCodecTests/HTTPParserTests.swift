import Testing
@testable import HTTPCodec

/// What the parser made of some input: the requests, then the status of the error that stopped it.
struct ParseOutcome: Equatable, CustomStringConvertible {
    struct Summary: Equatable {
        var method: String
        var target: String
        var path: String
        var query: String?
        var versionMinor: Int
        var headers: [String]
        var keepAlive: Bool
        var body: [UInt8]
    }
    var requests: [Summary]
    var errorStatus: Int?

    var description: String { "requests: \(requests), error: \(errorStatus.map(String.init) ?? "none")" }
}

func summary(_ request: HTTPRequest) -> ParseOutcome.Summary {
    let head = request.head
    return .init(method: head.method, target: head.target, path: head.path, query: head.query,
                 versionMinor: head.versionMinor, headers: head.headers.map { "\($0.name): \($0.value)" },
                 keepAlive: head.keepAlive, body: request.body)
}

func parse(_ chunks: [[UInt8]], maxHeadSize: Int = 16 * 1024, maxBodySize: Int = 1 << 20) -> ParseOutcome {
    var parser = HTTPRequestParser(maxHeadSize: maxHeadSize, maxBodySize: maxBodySize)
    var requests: [ParseOutcome.Summary] = []
    for chunk in chunks {
        chunk.withUnsafeBytes { parser.feed($0) }
        do {
            while let request = try parser.nextRequest() { requests.append(summary(request)) }
        } catch {
            return ParseOutcome(requests: requests, errorStatus: error.status)
        }
    }
    return ParseOutcome(requests: requests, errorStatus: nil)
}

func parse(_ text: String, maxHeadSize: Int = 16 * 1024, maxBodySize: Int = 1 << 20) -> ParseOutcome {
    parse([Array(text.utf8)], maxHeadSize: maxHeadSize, maxBodySize: maxBodySize)
}

/// All at once, byte at a time and in pieces of every size from 2 to 9: same outcome.
func parseEveryWay(_ text: String, maxHeadSize: Int = 16 * 1024, maxBodySize: Int = 1 << 20,
                   sourceLocation: SourceLocation = #_sourceLocation) -> ParseOutcome {
    let all = Array(text.utf8)
    let whole = parse([all], maxHeadSize: maxHeadSize, maxBodySize: maxBodySize)
    #expect(parse(all.map { [$0] }, maxHeadSize: maxHeadSize, maxBodySize: maxBodySize) == whole,
            "byte at a time", sourceLocation: sourceLocation)
    for size in 2...9 {
        let pieces = stride(from: 0, to: all.count, by: size).map { Array(all[$0..<min(all.count, $0 + size)]) }
        #expect(parse(pieces, maxHeadSize: maxHeadSize, maxBodySize: maxBodySize) == whole,
                "pieces of \(size)", sourceLocation: sourceLocation)
    }
    return whole
}

@Suite("HTTP request parsing")
struct HTTPRequestParserTests {
    @Test func simpleGet() {
        let outcome = parseEveryWay("GET /v1/status?verbose=1&x HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n")
        #expect(outcome.errorStatus == nil)
        #expect(outcome.requests == [.init(
            method: "GET", target: "/v1/status?verbose=1&x", path: "/v1/status", query: "verbose=1&x", versionMinor: 1,
            headers: ["Host: example", "Accept: */*"], keepAlive: true, body: [])])
    }

    @Test func headerValuesAreTrimmedAndNamesKeepTheirCase() throws {
        var parser = HTTPRequestParser()
        parser.feed(Array("GET / HTTP/1.1\r\nHOST:   h \t\r\nX-Empty:\r\nconnection: Keep-Alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n".utf8))
        let request = try #require(try parser.nextRequest())
        let headers = request.head.headers
        #expect(headers["host"] == "h")
        #expect(headers["Host"] == "h")
        #expect(headers["x-empty"] == "")
        #expect(headers["missing"] == nil)
        #expect(headers.map(\.name) == ["HOST", "X-Empty", "connection", "Upgrade"])
        #expect(headers.containsToken("upgrade", in: "Connection"))
        #expect(headers.containsToken("KEEP-ALIVE", in: "connection"))
        #expect(!headers.containsToken("close", in: "Connection"))
        #expect(!headers.containsToken("keep", in: "Connection"))
        #expect(request.head.isWebSocketUpgrade)
    }

    @Test func repeatedHeadersKeepOrder() {
        var headers = HTTPHeaders()
        headers.add(name: "Sec-WebSocket-Extensions", value: "a")
        headers.add(name: "Other", value: "x")
        headers.add(name: "sec-websocket-extensions", value: "b, c")
        #expect(headers.values(for: "SEC-WEBSOCKET-EXTENSIONS") == ["a", "b, c"])
        #expect(headers["Sec-WebSocket-Extensions"] == "a")
        #expect(headers.containsToken("c", in: "sec-websocket-extensions"))
        #expect(headers.containsToken("a", in: "sec-websocket-extensions"))
    }

    @Test func bodyWithContentLength() {
        let outcome = parseEveryWay("POST /v1/reload HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n\r\n{\"reason\":\"test\"}")
        #expect(outcome.errorStatus == nil)
        #expect(outcome.requests.map(\.body) == [Array("{\"reason\":\"test\"}".utf8)])
    }

    @Test func bodyIsNotReturnedUntilComplete() throws {
        var parser = HTTPRequestParser()
        parser.feed(Array("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab".utf8))
        #expect(try parser.nextRequest() == nil)
        #expect(!parser.isIdle)
        parser.feed(Array("cd".utf8))
        #expect(try parser.nextRequest()?.body == Array("abcd".utf8))
        #expect(parser.isIdle)
    }

    @Test func pipelinedRequests() {
        let text = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            + "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
            + "GET /c HTTP/1.0\r\n\r\n"
        let outcome = parseEveryWay(text)
        #expect(outcome.errorStatus == nil)
        #expect(outcome.requests.map(\.path) == ["/a", "/b", "/c"])
        #expect(outcome.requests.map(\.body) == [[], Array("xyz".utf8), []])
        #expect(outcome.requests.map(\.keepAlive) == [true, true, false])
    }

    @Test func bareLineFeedsAreTolerated() {
        let outcome = parseEveryWay("GET /x HTTP/1.1\nHost: h\n\n")
        #expect(outcome.errorStatus == nil)
        #expect(outcome.requests.map(\.path) == ["/x"])
    }

    @Test func emptyLinesBeforeRequestLineAreIgnored() {
        #expect(parseEveryWay("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n").requests.count == 1)
    }

    @Test(arguments: [
        ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", true),
        ("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, Close\r\n\r\n", false),
        ("GET / HTTP/1.0\r\n\r\n", false),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
    ])
    func keepAlive(request: String, expected: Bool) {
        #expect(parse(request).requests.map(\.keepAlive) == [expected])
    }

    @Test(arguments: [
        ("/", "/", nil as String?),
        ("/a/b?", "/a/b", ""),
        ("/a%20b?q=1?2", "/a%20b", "q=1?2"),
        ("http://example.com:7400/v1/lease?x=1", "/v1/lease", "x=1"),
        ("HTTPS://example.com", "/", nil),
        ("*", "*", nil),
    ])
    func pathAndQuery(target: String, path: String, query: String?) {
        let outcome = parse("OPTIONS \(target) HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(outcome.requests.first?.path == path)
        #expect(outcome.requests.first?.query == query)
    }

    @Test func duplicateAgreeingContentLengthIsAccepted() {
        let outcome = parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")
        #expect(outcome.requests.map(\.body) == [Array("ok".utf8)])
        #expect(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2, 2\r\n\r\nok").requests.count == 1)
    }

    @Test(arguments: [
        "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",             // obs-fold
        "GET / HTTP/1.1\r\nHost: h\r\nX-A : b\r\n\r\n",               // whitespace before colon
        "GET / HTTP/1.1\r\nHost: h\r\nX(A): b\r\n\r\n",               // not a token
        "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n: empty\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: b\u{0}c\r\n\r\n",         // NUL
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: b\rc\r\n\r\n",             // bare CR
        "GET  / HTTP/1.1\r\nHost: h\r\n\r\n",                         // two spaces
        "GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1x\r\nHost: h\r\n\r\n",
        "GET / http/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",                                     // no Host in 1.1
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\nx",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ])
    func malformedRequestIs400(request: String) {
        #expect(parseEveryWay(request).errorStatus == 400)
    }

    @Test func transferEncodingIs501() {
        var parser = HTTPRequestParser()
        parser.feed(Array("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
        #expect(throws: HTTPParseError.self) { try parser.nextRequest() }
        #expect(parseEveryWay("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").errorStatus == 501)
    }

    @Test(arguments: ["GET / HTTP/2.0\r\nHost: h\r\n\r\n", "GET / HTTP/0.9\r\n\r\n", "GET / HTTP/3.0\r\n\r\n"])
    func otherMajorVersionsAre505(request: String) {
        #expect(parseEveryWay(request).errorStatus == 505)
    }

    @Test func headLargerThanLimitIs431BeforeItEnds() {
        // No line end at all: refused once the limit is passed.
        let endless = "GET /" + String(repeating: "a", count: 200)
        #expect(parse(endless, maxHeadSize: 100) == ParseOutcome(requests: [], errorStatus: 431))
        #expect(parse(String(endless.prefix(100)), maxHeadSize: 100) == ParseOutcome(requests: [], errorStatus: nil))
        // Many complete header lines, no blank line yet.
        let lines = "GET / HTTP/1.1\r\n" + String(repeating: "X-Filler: 0123456789\r\n", count: 10)
        #expect(parseEveryWay(lines, maxHeadSize: 100).errorStatus == 431)
    }

    @Test func headOfExactlyTheLimitIsAccepted() {
        let request = "GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        #expect(parseEveryWay(request, maxHeadSize: request.utf8.count).requests.count == 1)
        #expect(parseEveryWay(request, maxHeadSize: request.utf8.count - 1).errorStatus == 431)
    }

    @Test func tooManyHeadersIs431() {
        let many = "GET / HTTP/1.1\r\nHost: h\r\n" + (0..<100).map { "X-\($0): v\r\n" }.joined() + "\r\n"
        #expect(parse(many).errorStatus == 431)
        let enough = "GET / HTTP/1.1\r\nHost: h\r\n" + (0..<99).map { "X-\($0): v\r\n" }.joined() + "\r\n"
        #expect(parse(enough).requests.count == 1)
    }

    @Test func bodyLargerThanLimitIs413AsSoonAsHeadersEnd() {
        let head = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n"
        #expect(parse(head, maxBodySize: 100) == ParseOutcome(requests: [], errorStatus: 413))
        #expect(parse(head + String(repeating: "a", count: 101), maxBodySize: 101).requests.count == 1)
        let overflowing = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999999\r\n\r\n"
        #expect(parse(overflowing).errorStatus == 413)
    }

    @Test func errorIsSticky() {
        var parser = HTTPRequestParser()
        parser.feed(Array("BAD\r\n".utf8))
        #expect(throws: HTTPParseError.self) { try parser.nextRequest() }
        parser.feed(Array("GET / HTTP/1.1\r\nHost: h\r\n\r\n".utf8))
        #expect(throws: HTTPParseError.self) { try parser.nextRequest() }
    }

    @Test func upgradeHandsOverTheBytesThatFollow() throws {
        var parser = HTTPRequestParser()
        let upgrade = "GET /v1/lease HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        parser.feed(Array(upgrade.utf8) + [0x81, 0x85, 0x37])
        let request = try #require(try parser.nextRequest())
        #expect(request.head.isWebSocketUpgrade)
        #expect(parser.takeUnconsumedBytes() == [0x81, 0x85, 0x37])
        #expect(parser.takeUnconsumedBytes() == [])
        #expect(parser.isIdle)
    }

    @Test func idleParserReleasesItsBuffers() throws {
        var parser = HTTPRequestParser()
        #expect(parser.isIdle)
        parser.feed(Array("GET / HTTP/1.1\r\n".utf8))
        #expect(try parser.nextRequest() == nil)
        #expect(!parser.isIdle)
        parser.releaseIdleBuffers()   // must keep the partial head
        parser.feed(Array("Host: h\r\n\r\n".utf8))
        #expect(try parser.nextRequest() != nil)
        #expect(parser.isIdle)
        parser.releaseIdleBuffers()
        parser.feed(Array("GET /again HTTP/1.1\r\nHost: h\r\n\r\n".utf8))
        #expect(try parser.nextRequest()?.head.path == "/again")
    }
}

@Suite("HTTP responses")
struct HTTPResponseTests {
    func text(_ response: HTTPResponse, keepAlive: Bool) -> String {
        String(decoding: response.serialized(keepAlive: keepAlive), as: UTF8.self)
    }

    @Test func textResponse() {
        #expect(text(.text(200, "ok"), keepAlive: true)
                == "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        #expect(text(.text(404, "no"), keepAlive: false)
                == "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")
    }

    @Test func emptyBodyStillHasContentLength() {
        #expect(text(HTTPResponse(status: 200), keepAlive: true) == "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n")
    }

    @Test func callerContentLengthAndConnectionAreReplaced() {
        let response = HTTPResponse(status: 200, headers: ["Content-Length": "99", "connection": "x", "X-A": "1"], body: [0x61])
        #expect(text(response, keepAlive: false) == "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 1\r\nConnection: close\r\n\r\na")
    }

    @Test(arguments: [204, 304])
    func noContentLengthForBodylessStatuses(status: Int) {
        let serialized = text(HTTPResponse(status: status, body: [1, 2]), keepAlive: true)
        #expect(!serialized.lowercased().contains("content-length"))
        #expect(serialized.hasSuffix("\r\nConnection: keep-alive\r\n\r\n"))
    }

    @Test func switchingProtocolsKeepsTheCallersHeaders() {
        let response = HTTPResponse(status: 101, headers: [
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        ])
        #expect(text(response, keepAlive: true) == "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                + "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    }

    @Test func headerInjectionIsNeutralised() {
        let response = HTTPResponse(status: 200, headers: ["X-Reason": "a\r\nSet-Cookie: evil"])
        #expect(text(response, keepAlive: true).contains("X-Reason: a  Set-Cookie: evil\r\n"))
    }

    @Test(arguments: [(200, "OK"), (101, "Switching Protocols"), (401, "Unauthorized"), (409, "Conflict"),
                      (413, "Content Too Large"), (431, "Request Header Fields Too Large"), (501, "Not Implemented"),
                      (505, "HTTP Version Not Supported"), (599, "Server Error")])
    func reasonPhrases(status: Int, phrase: String) {
        #expect(HTTPResponse.reasonPhrase(status) == phrase)
    }
}

@Suite("HTTP parser robustness")
struct HTTPParserRobustnessTests {
    /// Mutated valid requests, fed in random pieces: the parser may refuse them but must never trap.
    @Test func mutatedInputNeverTraps() {
        let seed = Array(("POST /v1/resources/x/free?y=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n"
            + "Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello GET / HTTP/1.0\r\n\r\n").utf8)
        let interesting: [UInt8] = [0x0D, 0x0A, 0x20, 0x09, 0x3A, 0x00, 0x7F, 0xFF, 0x30, 0x39, 0x2C]
        var state: UInt64 = 12345
        func next() -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int(truncatingIfNeeded: state >> 33)
        }
        for _ in 0..<3000 {
            var input = seed
            for _ in 0..<(next() % 6 + 1) {
                let position = next() % input.count
                switch next() % 3 {
                case 0: input[position] = interesting[next() % interesting.count]
                case 1: input.insert(interesting[next() % interesting.count], at: position)
                default: input.remove(at: position)
                }
            }
            var parser = HTTPRequestParser(maxHeadSize: 128, maxBodySize: 16)
            var index = 0
            feeding: while index < input.count {
                let size = min(input.count - index, next() % 9 + 1)
                parser.feed(Array(input[index..<(index + size)]))
                index += size
                do {
                    while try parser.nextRequest() != nil {}
                } catch {
                    #expect([400, 413, 431, 501, 505].contains(error.status))
                    break feeding
                }
            }
        }
    }
}

@Suite("HTTP response parsing (client side)")
struct HTTPResponseParserTests {
    func responses(_ chunks: [[UInt8]], finish: Bool = false) -> (statuses: [Int], bodies: [String], error: Int?) {
        var parser = HTTPResponseParser(maxHeadSize: 1024, maxBodySize: 64)
        var statuses: [Int] = []
        var bodies: [String] = []
        do {
            for chunk in chunks {
                parser.feed(chunk)
                while let response = try parser.nextResponse() {
                    statuses.append(response.head.status)
                    bodies.append(String(decoding: response.body, as: UTF8.self))
                }
            }
            if finish, let response = try parser.finish() {
                statuses.append(response.head.status)
                bodies.append(String(decoding: response.body, as: UTF8.self))
            }
        } catch {
            return (statuses, bodies, error.status)
        }
        return (statuses, bodies, nil)
    }

    @Test func upgradeResponseHandsOverFollowingFrames() throws {
        let serialized = HTTPResponse(status: 101, headers: [
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        ]).serialized(keepAlive: true)
        for split in [1, serialized.count / 2, serialized.count] {
            var parser = HTTPResponseParser()
            parser.feed(Array(serialized[..<split]))
            var response = try parser.nextResponse()
            if response == nil {
                parser.feed(Array(serialized[split...]) + [0x81, 0x02])
                response = try parser.nextResponse()
            } else {
                parser.feed(Array(serialized[split...]) + [0x81, 0x02])
            }
            let head = try #require(response).head
            #expect(head.status == 101)
            #expect(head.reason == "Switching Protocols")
            #expect(head.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            #expect(parser.takeUnconsumedBytes() == [0x81, 0x02])
        }
    }

    @Test func contentLengthBodiesByteAtATime() {
        let text = HTTPResponse.text(200, "ok").serialized(keepAlive: true) + HTTPResponse.text(404, "missing").serialized(keepAlive: true)
        let whole = responses([text])
        #expect(whole.statuses == [200, 404])
        #expect(whole.bodies == ["ok", "missing"])
        let bytewise = responses(text.map { [$0] })
        #expect(bytewise.statuses == whole.statuses && bytewise.bodies == whole.bodies)
    }

    @Test func bodyUntilCloseAndInterimResponses() {
        let text = Array("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close".utf8)
        let result = responses([text], finish: true)
        #expect(result.statuses == [200])
        #expect(result.bodies == ["until close"])
        #expect(responses([Array("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab".utf8)], finish: true).error == 400)
    }

    @Test(arguments: [
        ("HTTP/1.1 20 OK\r\n\r\n", 400), ("HTTP/2 200 OK\r\n\r\n", 400), ("HTTP/2.0 200 OK\r\n\r\n", 505),
        ("HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n", 413), ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        ("HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: 2000), 431),
    ])
    func malformedResponses(text: String, status: Int) {
        #expect(responses([Array(text.utf8)]).error == status)
    }
}

@Suite("HTTP request writing (client side)")
struct HTTPRequestWriterTests {
    @Test func writtenRequestParsesBack() throws {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "127.0.0.1:7400")
        headers.add(name: "Authorization", value: "Bearer t\r\nX-Evil: 1")
        let request = HTTPRequest(head: HTTPRequestHead(method: "POST", target: "/v1/resources/a/free?x=1", headers: headers),
                                  body: Array("{\"reason\":\"r\"}".utf8))
        let bytes = request.serialized()
        #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("POST /v1/resources/a/free?x=1 HTTP/1.1\r\nHost: 127.0.0.1:7400\r\n"))
        var parser = HTTPRequestParser()
        parser.feed(bytes)
        let parsed = try #require(try parser.nextRequest())
        #expect(parsed.head.path == "/v1/resources/a/free")
        #expect(parsed.head.headers["authorization"] == "Bearer t  X-Evil: 1")
        #expect(parsed.head.headers["X-Evil"] == nil)
        #expect(parsed.body == request.body)
    }

    @Test func getWithoutBodyHasNoContentLength() {
        let request = HTTPRequest(head: HTTPRequestHead(method: "GET", target: "/v1/lease", headers: ["Host": "h"]))
        #expect(String(decoding: request.serialized(), as: UTF8.self) == "GET /v1/lease HTTP/1.1\r\nHost: h\r\n\r\n")
    }
}
