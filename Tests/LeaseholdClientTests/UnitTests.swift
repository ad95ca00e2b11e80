import LeaseholdClient
import Testing

@Suite struct ServerURLTests {
    @Test func parsesWebSocketAddressesWithDefaults() throws {
        #expect(try ServerURL(parsing: "ws://127.0.0.1:7400") == ServerURL(host: "127.0.0.1", port: 7400))
        #expect(try ServerURL(parsing: "ws://lab.example") == ServerURL(host: "lab.example", port: 7400))
        #expect(try ServerURL(parsing: "lab.example:8000") == ServerURL(host: "lab.example", port: 8000))
        #expect(try ServerURL(parsing: "http://h:1/") == ServerURL(host: "h", port: 1))
        #expect(try ServerURL(parsing: "ws://[::1]:9") == ServerURL(host: "::1", port: 9))
        #expect(try ServerURL(parsing: "ws://h:9/lease/") == ServerURL(host: "h", port: 9, pathPrefix: "/lease"))
        #expect(try ServerURL(parsing: "ws://localhost:9").host == "127.0.0.1")
    }

    @Test func acceptsTLSAddressesButMarksThem() throws {
        let url = try ServerURL(parsing: "wss://lab.example:443")
        #expect(url.tls)
        #expect(url.description == "wss://lab.example:443")
    }

    @Test(arguments: ["", "ftp://h:1", "ws://:1", "ws://h:0", "ws://h:70000", "ws://h:x", "ws://u@h:1", "ws://[::1"])
    func rejectsBadAddresses(_ text: String) {
        #expect(throws: LeaseholdError.self) { try ServerURL(parsing: text) }
    }
}

@Suite struct WantArgumentTests {
    @Test func groupsFollowTheOrderOfTypeAndName() throws {
        let groups = try WantArguments.groups(from: [
            "--server", "ws://x", "--type", "array", "--label", "proto=fc", "--count", "2",
            "--name", "switch-03", "--type=port", "--label=speed=100g", "--", "--type", "ignored",
        ])
        #expect(groups == [
            .type("array", labels: ["proto": "fc"], count: 2),
            .name("switch-03"),
            .type("port", labels: ["speed": "100g"], count: 1),
        ])
    }

    @Test(arguments: [
        ["--label", "a=b", "--type", "x"],      // label before any type
        ["--name", "n", "--count", "2"],        // count on a name group
        ["--type", "x", "--count", "0"],
        ["--type", "x", "--count", "2", "--count", "3"],
        ["--type", "x", "--label", "novalue"],
        ["--type", "x", "--label", "a=1", "--label", "a=2"],
        ["--holder", "h"],                       // nothing wanted
        ["--type"],
    ])
    func refusesGroupsThatMeanNothing(_ arguments: [String]) {
        #expect(throws: LeaseholdError.self) { try WantArguments.groups(from: arguments) }
    }
}

@Suite struct LeaseEnvironmentTests {
    @Test func namesEveryResourceByGroupAndIndex() {
        let lease = Lease(id: "L1", resources: [
            GrantedResource(name: "array-01", type: "array", labels: ["proto": "fc"],
                            attributes: .object([("mgmt", .string("10.0.0.11")), ("api-url", .string("https://a")),
                                                 ("ports", .array([.int(1), .int(2)])), ("name", .string("shadowed"))]),
                            epoch: 7),
            GrantedResource(name: "array-02", type: "array", labels: [:], attributes: .object([]), epoch: 1),
            GrantedResource(name: "switch-03", type: "switch", labels: [:], attributes: .object([]), epoch: 2),
        ])
        let variables = Dictionary(LeaseEnvironment.variables(
            for: lease, want: [.type("array", labels: [:], count: 2), .name("switch-03")]), uniquingKeysWith: { a, _ in a })
        #expect(variables["LEASEHOLD_LEASE"] == "L1")
        #expect(variables["LEASEHOLD_NAMES"] == "array-01 array-02 switch-03")
        #expect(variables["LEASEHOLD_0_0_NAME"] == "array-01")
        #expect(variables["LEASEHOLD_0_0_TYPE"] == "array")
        #expect(variables["LEASEHOLD_0_0_EPOCH"] == "7")
        #expect(variables["LEASEHOLD_0_0_MGMT"] == "10.0.0.11")
        #expect(variables["LEASEHOLD_0_0_API_URL"] == "https://a")
        #expect(variables["LEASEHOLD_0_0_PORTS"] == "[1,2]")
        #expect(variables["LEASEHOLD_0_1_NAME"] == "array-02")
        #expect(variables["LEASEHOLD_1_0_NAME"] == "switch-03")
        let resources = try? JSONValue.parse(variables["LEASEHOLD_RESOURCES"] ?? "")
        #expect(resources?.serialized().contains("\"shadowed\"") == true)
    }
}

@Suite struct StatusFormattingTests {
    @Test func parsesTimestampsAndFormatsAges() {
        #expect(StatusSnapshot.parseTimestamp("1970-01-01T00:01:00Z") == 60)
        #expect(StatusSnapshot.parseTimestamp("2026-11-25T16:04:45.5Z") == 1_795_622_685.5)
        #expect(StatusSnapshot.parseTimestamp("yesterday") == nil)
        #expect(StatusSnapshot.age(42) == "42s")
        #expect(StatusSnapshot.age(252) == "4m12s")
        #expect(StatusSnapshot.age(3 * 3600 + 300) == "3h05m")
        #expect(StatusSnapshot.age(-5) == "0s")
    }

    @Test func rendersHeldResourcesAndTheQueue() throws {
        let document = """
            {"event":"snapshot","resources":[
              {"name":"array-01","type":"array","labels":{},"attributes":{},"state":"held","lease":"L7","holder":"ci/1","epoch":3,"since":"1970-01-01T00:00:00Z"},
              {"name":"array-02","type":"array","labels":{},"attributes":{},"state":"free","lease":null,"holder":null,"epoch":0,"since":"1970-01-01T00:00:00Z"}],
             "leases":[],
             "queue":[{"id":"L9","holder":"ci/2","position":1,"want":[{"type":"array","count":2,"labels":{"proto":"fc"}}],"since":"1970-01-01T00:01:00Z"}]}
            """
        let snapshot = try StatusSnapshot(parsing: Array(document.utf8))
        let table = snapshot.table(now: 130)
        #expect(table.contains("array-01  array  held   ci/1    2m10s     L7"))
        #expect(table.contains("queue: 1 waiting"))
        #expect(table.contains("array x2 {proto=fc}"))
        #expect(table.contains("1    L9     ci/2    1m10s"))
    }

    @Test func saysWhoBlocksAWaiterAndWhyAResourceIsDisabled() throws {
        let document = """
            {"event":"snapshot","resources":[
              {"name":"array-01","type":"array","labels":{},"attributes":{},"state":"held","lease":"L7","holder":"ci/1","epoch":3,"since":"1970-01-01T00:00:00Z"},
              {"name":"array-02","type":"array","labels":{},"attributes":{},"state":"disabled","lease":null,"holder":null,"epoch":0,"since":"1970-01-01T00:00:00Z",
               "disabled":{"reason":"firmware upgrade","since":"1970-01-01T00:00:00Z"}}],
             "leases":[{"id":"L7","holder":"ci/1","resources":["array-01"],"state":"granted"}],
             "queue":[{"id":"L9","holder":"ci/2","position":1,"want":[{"name":"array-01"}],"since":"1970-01-01T00:01:00Z",
                       "until":"1970-01-01T01:00:00Z","blocked_by":["L7"]}]}
            """
        let snapshot = try StatusSnapshot(parsing: Array(document.utf8))
        #expect(snapshot.blockers(ofWaiter: "L9") == "lease L7 of ci/1 (array-01)")
        #expect(snapshot.blockers(ofWaiter: "L1") == nil)
        #expect(snapshot.queue.first?.until == "1970-01-01T01:00:00Z")
        let table = snapshot.table(now: 130)
        #expect(table.contains("BLOCKED BY"))
        #expect(table.contains("L7 (ci/1)"))
        #expect(table.contains("disabled:\n  array-02: firmware upgrade"), "\(table)")
    }

    @Test func refusesADocumentWithoutResources() {
        #expect(throws: LeaseholdError.self) { try StatusSnapshot(parsing: Array("{\"queue\":[]}".utf8)) }
        #expect(throws: LeaseholdError.self) { try StatusSnapshot(parsing: Array("not json".utf8)) }
    }
}
