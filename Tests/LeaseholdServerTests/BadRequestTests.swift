import LeaseProtocol
import Testing

private let emoji200 = String(repeating: "😀", count: 200)
private let metaEntries16 = (1...16).map { "\"k\($0)\":\"v\"" }.joined(separator: ",")
private let metaEntries17 = (1...17).map { "\"k\($0)\":\"v\"" }.joined(separator: ",")
private let key64 = String(repeating: "k", count: 64)
private let value500 = String(repeating: "é", count: 500)
private let groups16 = "[" + Array(repeating: #"{"type":"switch"}"#, count: 16).joined(separator: ",") + "]"
private let groups17 = "[" + Array(repeating: #"{"type":"switch"}"#, count: 17).joined(separator: ",") + "]"

/// PROTOCOL.md "Details that clients rely on": every rule that makes a first message
/// `bad_request` (error event, then close 4400).
@Suite struct BadRequestTests {
    @Test(arguments: [
        ("invalid JSON", #"{"op":"acquire","want":[{"name":"switch-01"}]"#),
        ("not an object", #"["acquire"]"#),
        ("op missing", #"{"want":[{"name":"switch-01"}]}"#),
        ("op unknown", #"{"op":"grab","want":[{"name":"switch-01"}]}"#),
        ("op not a string", #"{"op":1,"want":[{"name":"switch-01"}]}"#),
        ("release as the first message", #"{"op":"release"}"#),
        ("want missing", #"{"op":"acquire"}"#),
        ("want empty", #"{"op":"acquire","want":[]}"#),
        ("want over 16 groups", #"{"op":"acquire","want":\#(groups17)}"#),
        ("want not an array", #"{"op":"acquire","want":{"name":"switch-01"}}"#),
        ("group not an object", #"{"op":"acquire","want":["switch-01"]}"#),
        ("name with type", #"{"op":"acquire","want":[{"name":"switch-01","type":"switch"}]}"#),
        ("name with labels", #"{"op":"acquire","want":[{"name":"switch-01","labels":{}}]}"#),
        ("name with count", #"{"op":"acquire","want":[{"name":"switch-01","count":1}]}"#),
        ("unknown group key", #"{"op":"acquire","want":[{"type":"switch","colour":"red"}]}"#),
        ("group with neither name nor type", #"{"op":"acquire","want":[{"count":1}]}"#),
        ("label value a number", #"{"op":"acquire","want":[{"type":"array","labels":{"proto":1}}]}"#),
        ("label value null", #"{"op":"acquire","want":[{"type":"array","labels":{"proto":null}}]}"#),
        ("count zero", #"{"op":"acquire","want":[{"type":"switch","count":0}]}"#),
        ("count negative", #"{"op":"acquire","want":[{"type":"switch","count":-1}]}"#),
        ("count fractional", #"{"op":"acquire","want":[{"type":"switch","count":1.5}]}"#),
        ("count a string", #"{"op":"acquire","want":[{"type":"switch","count":"1"}]}"#),
        ("wait negative", #"{"op":"acquire","want":[{"type":"switch"}],"wait":-1}"#),
        ("wait a string", #"{"op":"acquire","want":[{"type":"switch"}],"wait":"10"}"#),
        ("holder of 201 characters", #"{"op":"acquire","want":[{"type":"switch"}],"holder":"\#(emoji200)x"}"#),
        ("holder not a string", #"{"op":"acquire","want":[{"type":"switch"}],"holder":7}"#),
        ("meta of 17 entries", #"{"op":"acquire","want":[{"type":"switch"}],"meta":{\#(metaEntries17)}}"#),
        ("meta key of 65 characters", #"{"op":"acquire","want":[{"type":"switch"}],"meta":{"\#(key64)x":"v"}}"#),
        ("meta value of 501 characters", #"{"op":"acquire","want":[{"type":"switch"}],"meta":{"k":"\#(value500)x"}}"#),
        ("meta value a number", #"{"op":"acquire","want":[{"type":"switch"}],"meta":{"k":1}}"#),
        ("meta not an object", #"{"op":"acquire","want":[{"type":"switch"}],"meta":"job"}"#),
    ])
    func aBadFirstMessageIsBadRequestThenClose4400(_ testCase: (String, String)) async throws {
        let server = try TestServer()
        let client = try await server.lease()
        client.send(testCase.1)
        try await client.expectFailure("bad_request", closeCode: 4400)
        // Nothing was taken.
        let document = try await server.status()
        #expect(document["leases"]?.arrayValue?.isEmpty == true)
        #expect(document["queue"]?.arrayValue?.isEmpty == true)
        await server.stop()
    }

    @Test(arguments: [
        ("holder of 200 emoji (200 characters, 800 bytes)", #""holder":"\#(emoji200)""#),
        ("16 groups", ""),
        ("meta of 16 entries", #""meta":{\#(metaEntries16)}"#),
        ("meta key of 64 characters and value of 500", #""meta":{"\#(key64)":"\#(value500)"}"#),
        ("meta null", #""meta":null"#),
        ("wait null", #""wait":null"#),
        ("holder null", #""holder":null"#),
        ("labels null and integral count as a float", #""x":0"#),
    ])
    func requestsAtTheLimitsAreAccepted(_ testCase: (String, String)) async throws {
        let inventory = "resources:\n" + (1...16).map { "  - {name: s\($0), type: switch}\n" }.joined()
        let server = try TestServer(inventory: inventory)
        let client = try await server.lease()
        let want: String
        switch testCase.0 {
        case "16 groups": want = groups16
        case "labels null and integral count as a float": want = #"[{"type":"switch","labels":null,"count":2.0}]"#
        default: want = #"[{"type":"switch"}]"#
        }
        client.send(acquireJSON(want, extra: testCase.1))
        let granted = try await client.expectEvent("granted")
        #expect(grantedNames(granted).count == (testCase.0 == "16 groups" ? 16 : testCase.0.hasPrefix("labels null") ? 2 : 1))
        if testCase.0.hasPrefix("holder of 200") {
            #expect(try await server.status()["leases"]?.arrayValue?.first?["holder"] == .string(emoji200))
        }
        client.close()
        await server.stop()
    }

    @Test func metaShowsOnTheLeaseAndOnTheQueueEntry() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let client = try await server.acquire(#"[{"name":"switch-01"}]"#, holder: "ci/1",
                                              extra: #""meta":{"job":"https://ci.example/job/1","commit":"9f2c1e0"}"#)
        try await client.expectEvent("queued")
        let queued = try #require(try await server.status()["queue"]?.arrayValue?.first)
        #expect(queued["meta"]?["job"] == .string("https://ci.example/job/1"))
        #expect(queued["meta"]?["commit"] == .string("9f2c1e0"))
        holder.close()
        try await nextGrant(client)
        let lease = try await server.waitForStatus("the waiter's lease") { $0["leases"]?.arrayValue?.count == 1 }["leases"]?.arrayValue?.first
        #expect(lease?["holder"] == .string("ci/1"))
        #expect(lease?["meta"]?["job"] == .string("https://ci.example/job/1"))
        #expect(lease?["meta"]?["commit"] == .string("9f2c1e0"))
        client.close()
        await server.stop()
    }
}
